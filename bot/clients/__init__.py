"""Clients for X, the model and Telegram: the only modules that import tweepy, openai or telegram.

Each raises ``ClientError`` (a ``resilience.ServiceError``) whose ``kind`` says whose
business a failure is, and makes every call through its service's circuit breaker.
"""
