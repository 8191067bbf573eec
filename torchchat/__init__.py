"""torchchat: run, chat with, export and benchmark LLMs on your own machine."""
