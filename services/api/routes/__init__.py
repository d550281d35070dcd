"""The routes of a model service, one `APIRouter` per area, included once by services.api.app."""
