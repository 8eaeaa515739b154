"""Clean: standardised, identity-resolved silver tables, one module per entity family, bad rows quarantined."""
