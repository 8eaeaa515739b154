"""Outputs: segment assignments, history, migrations, profiles and the HTML report."""
