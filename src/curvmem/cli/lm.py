"""(being written)"""


def register(sub, evaluate_sub) -> None:
    pass
