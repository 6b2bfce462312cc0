"""Routing: which agent gets a task (`weights`, pure), applied through the store (`router`)."""
