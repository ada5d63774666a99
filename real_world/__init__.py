"""The real-web track (issue 15, part 1): MedSafetyWorld's interventions applied to FineWeb-Edu text.

Installed as `medsafetyworld.real_world` (setup.py, like `baselines/`). It imports `medsafetyworld`;
nothing in `medsafetyworld` imports it. Its commands reach `msw` through the entry-point group
`medsafetyworld.commands` (`msw real-world ...`). The datatrove pipeline needs the optional extra
`pip install 'medsafetyworld[real-world]'`; labelers and interventions need only the base install.

- `fineweb`: the FineWeb-Edu Parquet schema, local shards and the hub path (online only).
- `labelers`: a registry of labelers (`keyword`, `tfidf`, and from their own modules `hf_classifier` in
  `classifier` and `llm_judge` in `judge`) giving a 0-5 score, a category and segment labels.
- `endpoint`: an OpenAI-compatible chat endpoint (a local vLLM or llama.cpp server) and its reply cache.
- `prompts`: the judge's 0-5 rubric and the rewriting modes' style templates.
- `interventions`: the package's own strategies (filter, tag, reflect, ...) on labeled web documents.
- `rewriter`: rewrite, refusal and moral on web text through the LLM (`llm_strategy`).
- `pipeline`: reader, labeler, strategy, tokenizer and writer as datatrove steps; the corpus `msw train` reads.
- `executors`: which datatrove executor runs them (local, Slurm, Ray).
"""
