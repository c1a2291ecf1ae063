"""Helpers for the XAI notebook course."""
