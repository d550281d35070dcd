"""The drift service: logged traffic vs each champion's reference, gauges, reports, retraining."""
