"""The HTTP service (`mta-feedback serve`): ingest webhooks and the KumoMTA TSA API."""
