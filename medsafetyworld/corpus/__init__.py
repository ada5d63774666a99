"""Documents of the world: templates, rendering, the raw stream, the tokenizer and Parquet shards."""
