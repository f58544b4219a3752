"""Terminal install wizard and status dashboard (Textual): a thin front door over ``appliance``.

The wizard only collects choices into an answers file and renders engine events; every decision
about what runs where stays in the engine, so ``appliance up --answers FILE`` reproduces any
wizard run exactly.
"""
