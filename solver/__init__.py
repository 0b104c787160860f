"""mpq solver package."""
