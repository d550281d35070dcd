"""The drift service's routes, one `APIRouter` per area, included once by services.drift.app."""
