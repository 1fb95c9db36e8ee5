"""Leaderboards and reports of comparisons."""
