"""Reading records: statistics, report pages and plots, compare, gate and baselines. Never imports torch."""
