"""torchchat eval: perplexity and benchmark tasks (evals/README.md)."""
