"""The slimlm commands, one module each. A stage reads validate -> load -> work -> measure -> publish.

Stages do not import one another, except `prune --recover-tokens`, which runs the `distill` stage on the
pruned model (docs/architecture.md).
"""
