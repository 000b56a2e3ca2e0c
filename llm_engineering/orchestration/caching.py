"""The cache policy of every cached step: ZenML's default key (step code, parameters, input artifacts) plus the library's
code digest, since the steps are thin and what they compute lives in llm_engineering (a changed library must not
serve an old output from the cache). Local files a step reads are covered by a digest parameter (pipelines/)."""

from zenml.config.cache_policy import CachePolicy

LIBRARY_AWARE = CachePolicy(cache_func="llm_engineering.codebase.library_digest")
