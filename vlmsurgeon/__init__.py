"""vlmsurgeon: inspect, freeze, fine-tune (QLoRA), merge and guard vision-language models."""

__version__ = "0.1.0"
