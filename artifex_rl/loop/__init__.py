"""The fit loop and the metric aggregator."""
