"""The pipeline's business logic. Tasks, commands, views and the admin only call these."""
