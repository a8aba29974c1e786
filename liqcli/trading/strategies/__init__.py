"""Built-in strategies: the seed's four order-flow modes (``seed``)."""
