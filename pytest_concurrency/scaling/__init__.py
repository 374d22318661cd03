"""Does work scale with cores: plan, measurement, child, statistics, verdict, plot. No pytest."""
