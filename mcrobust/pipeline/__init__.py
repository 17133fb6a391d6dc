"""The one-process repair behind `mcrobust.repair()`: user inputs, second-end recipes, the chain of stages."""
