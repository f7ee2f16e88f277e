"""Setting defaults read beyond ``settings.py``: the launcher counts pacing set to these
as unset (``.env.example`` spells them out), so ``make run`` may still quicken it."""

PACING_DEFAULTS = {
    "MIN_DELAY_MINUTES": 5,
    "MAX_DELAY_MINUTES": 30,
    "MIN_SPACING_MINUTES": 3,
    "QUIET_HOURS_START": 23,
    "QUIET_HOURS_END": 7,
}
