"""Evidence a regulator can check: signed, chained journal receipts (docs/evidence.md)."""
