"""`python -m regime_pipeline` is the `regime-pipeline` command."""

from regime_pipeline.cli import main

main()
