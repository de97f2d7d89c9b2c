"""The annotation web app (FastAPI): `prefloop.feedback.app.main.create_app(settings)`."""
