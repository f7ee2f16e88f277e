"""The owner's Telegram: approval messages, button presses, commands, alert delivery.

``bot.clients.telegram`` speaks the Bot API; this package decides what to say and
what a press or a command does, through the pipeline's services.
"""
