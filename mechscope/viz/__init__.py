"""Rendering shared by notebooks, reports and the web app."""
