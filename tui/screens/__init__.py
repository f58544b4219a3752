"""Screens: one module per wizard step, plus the dashboard and the modals."""
