"""Search engines behind one interface (sleuth.search.base.SearchEngine)."""
