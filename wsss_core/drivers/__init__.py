"""Drivers: the loops a stage runs (dataset index -> model -> artifact writer), one module per stage family.

Stages (stages/*.py) parse their command line and call one driver; the models and kernels they drive live in
`cam`, `prompts`, `seeding`, `segment` and `masks`.
"""
