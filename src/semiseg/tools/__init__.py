"""Tools beside training: benchmarks, comparisons, the recipe table, sweep reports, op damage.

Each runs as `python -m semiseg.tools.<name>`: bench (training steps; bench_data and bench_eval
time the data pipeline and sliding-window inference), compare, op_damage, recipes, report.
"""
