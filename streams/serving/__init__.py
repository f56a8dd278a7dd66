"""Serving the current state: Redis views and the output-topic consumer that fills them."""
