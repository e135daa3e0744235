"""Names of the node attributes, references and segment tags the two modules share (one place, one spelling)."""

# Set by MedLAMLocalize on the ROI box and the extreme-point list of each localized structure; read by
# MedFoundationSeg (the structure's name, terminology and whether the box was localized, which decides its padding).
STRUCTURE_ATTRIBUTE = "MedLAMLocalize.Structure"
TERMINOLOGY_ATTRIBUTE = "MedLAMLocalize.Terminology"  # a Slicer TerminologyEntry string
ENGINE_ATTRIBUTE = "MedLAMLocalize.Engine"  # medlam | registration
CONFIDENCE_ATTRIBUTE = "MedLAMLocalize.Confidence"
VOLUME_REFERENCE = "MedLAMLocalize.Volume"  # node reference: the volume the box was found in

# Segment tag holding the prompts of the AI action that made a segment (one JSON object).
PROMPTS_TAG = "MedFoundationSeg.Prompts"

# Marks the scratch segmentation that shows a running job's slices (never saved, never edited, removed at the end).
PREVIEW_ATTRIBUTE = "MedFoundationSeg.Preview"
