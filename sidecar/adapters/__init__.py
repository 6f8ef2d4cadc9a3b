"""Broker adapters: ``base`` holds the interface, one module per broker, ``registry`` names them."""
