"""softprompt: learn tiny prompts for one frozen pretrained transformer.

Layers, lowest first. A module imports only from its own layer or a lower one, and no
import (at the top of a file or inside a function) closes a cycle; each name is a
module or package directly under `softprompt`. tests/core/test_architecture.py reads
this list and checks both rules:

    errors files validate registry metrics device
    distributed promptfile plot
    backbones data
    inject init
    methods tasks
    model
    train evaluate ensemble config estimate
    search interop
    recipes
    serve client
    api
    commands
    cli
"""

__version__ = "0.1.0"
