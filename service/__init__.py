"""mpq service package."""
