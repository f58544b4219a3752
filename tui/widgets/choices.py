"""Radio buttons and checkboxes whose state shows without colour.

Textual's toggle buttons draw the same mark whether on or off and tell them apart by colour
only; on a monochrome terminal (or in ``tmux capture-pane``) every option looked chosen. These
draw the mark only when the option is on.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox, RadioButton


class Choice(RadioButton):
    """A radio button showing ``●`` when chosen and a blank when not."""

    @property
    def _button(self) -> Content:
        self.BUTTON_INNER = "●" if self.value else " "
        return super()._button


class Tick(Checkbox):
    """A checkbox showing ``X`` when ticked and a blank when not."""

    @property
    def _button(self) -> Content:
        self.BUTTON_INNER = "X" if self.value else " "
        return super()._button
