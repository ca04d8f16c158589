"""Helpers the tests of one family share across layers (models, routes, training): tiny models, request bodies."""
