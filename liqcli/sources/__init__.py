"""Sources of normalised market events: live venues and recordings, behind one shape."""
