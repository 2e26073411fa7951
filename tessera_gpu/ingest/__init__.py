"""`tessera ingest`: LeRobot and robomimic datasets to Tessera files (see docs/ingest.md)."""
