"""Trading-side building blocks (order books, ...): pure code, no sockets, files or timers."""
