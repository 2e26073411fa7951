"""What the page shows: datashader tiles, colours and legends, the episode under the cursor,
preview images typed by their magic bytes, and the per-projection caches behind them."""
