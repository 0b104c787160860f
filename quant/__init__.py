"""mpq quant package."""
