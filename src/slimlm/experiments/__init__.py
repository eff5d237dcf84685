"""The paper's studies (temperature, feature layer, LoRA vs full) and the whole pipeline, as runs that
write one folder each; `report.py` turns a folder into report.md/report.html with PNG plots."""
