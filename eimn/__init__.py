"""EIMN super-resolution model: faithful port, weight loading, CLI (``eimn``)."""
from .model import EIMN, EIMN_A, EIMN_L, MOLRCM, SADFFM, DFFM, EIMNBlock
from .load import load_model, load_state_dict_file, infer_config

__all__ = ["EIMN", "EIMN_A", "EIMN_L", "MOLRCM", "SADFFM", "DFFM", "EIMNBlock",
           "load_model", "load_state_dict_file", "infer_config"]
