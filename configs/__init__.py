"""Model configurations, one JSON file per dataset and model (installed as ``fastflow.configs``)."""
