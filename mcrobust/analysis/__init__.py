"""What is measured along a path and how it is reported: point metrics, the input Hessian, statistics,
figures and the report."""
