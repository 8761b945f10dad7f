"""Build the sample workbooks for promptbatch-sheets.

Run from anywhere:

    python sample_workbooks/make_samples.py

Every file is written next to this script. Output is deterministic: the same
openpyxl and Python versions produce byte-identical files on every run (the
zip timestamps and the document properties are pinned).
"""

import csv
import datetime
import io
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.workbook.defined_name import DefinedName
from openpyxl.worksheet.table import Table, TableStyleInfo
from openpyxl.worksheet.worksheet import Worksheet

HERE = Path(__file__).resolve().parent

# Fixed timestamps so that rebuilding gives the same bytes.
FIXED_DATETIME = datetime.datetime(2025, 1, 1, 0, 0, 0)
FIXED_ZIP_TIME = (2025, 1, 1, 0, 0, 0)
FIXED_W3CDTF = "2025-01-01T00:00:00Z"

BOLD = Font(bold=True)
HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
WRAP_TOP = Alignment(wrap_text=True, vertical="top")
TOP = Alignment(vertical="top")


# --------------------------------------------------------------------------- helpers


def new_workbook() -> Workbook:
    wb = Workbook()
    wb.properties.creator = "promptbatch-sheets sample generator"
    wb.properties.lastModifiedBy = "promptbatch-sheets sample generator"
    wb.properties.created = FIXED_DATETIME
    wb.properties.modified = FIXED_DATETIME
    return wb


def save_deterministic(wb: Workbook, path: Path) -> None:
    """Save ``wb`` to ``path`` with pinned timestamps (openpyxl stamps 'now' on save)."""
    buffer = io.BytesIO()
    wb.save(buffer)
    buffer.seek(0)
    out = io.BytesIO()
    with (
        zipfile.ZipFile(buffer) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(
                    rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)",
                    rb"\g<1>" + FIXED_W3CDTF.encode() + rb"\g<2>",
                    data,
                )
            entry = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            dst.writestr(entry, data)
    path.write_bytes(out.getvalue())


def write_header(ws: Worksheet, row: int, names: list[str]) -> None:
    for col, name in enumerate(names, start=1):
        cell = ws.cell(row=row, column=col, value=name)
        cell.font = BOLD
        cell.fill = HEADER_FILL


def write_conf(wb: Workbook, rows: Sequence[tuple[str, str | int]]) -> None:
    """A promptbatch.conf sheet: key | value rows under a header."""
    conf = wb.create_sheet("promptbatch.conf")
    write_header(conf, 1, ["key", "value"])
    for offset, (key, value) in enumerate(rows):
        conf.cell(row=2 + offset, column=1, value=key)
        conf.cell(row=2 + offset, column=2, value=value)
    set_widths(conf, {"A": 16, "B": 90})


def set_widths(ws: Worksheet, widths: dict[str, float]) -> None:
    for letter, width in widths.items():
        ws.column_dimensions[letter].width = width


# --------------------------------------------------------------------------- 1. products

PRODUCT_TEMPLATE = (
    "Write a one-sentence product description for {{ product_name }}, "
    "a {{ category }} item made of {{ material }}"
    "{% if price %} that sells for ${{ price }}{% endif %}."
)

# (Product Name, Category, Material, Price or None)
PRODUCTS: list[tuple[str, str, str, float | int | None]] = [
    ("Trailhead Water Bottle", "hiking", "stainless steel", 24.99),
    ("Cloudrest Pillow", "bedding", "memory foam", 39.95),
    ("Harbor Rain Jacket", "clothing", "recycled nylon", 89),
    ("Oakline Cutting Board", "kitchen", "oak wood", 32.49),
    ("Pebble Desk Lamp", "home office", "ceramic", 45),
    ("Sprout Seed Starter Kit", "garden", "biodegradable paper", 14.99),
    ("Nimbus Wireless Earbuds", "music", "matte plastic", 59.99),
    ("Atlas Weekender Bag", "travel", "waxed canvas", 120),
    ("Ember Cast Iron Skillet", "kitchen", "cast iron", 34.99),
    ("Meadow Picnic Blanket", "picnic", "cotton", None),
    ("Quill Fountain Pen", "stationery", "brass", 27.75),
    ("Summit Yoga Mat", "fitness", "natural rubber", 68),
]


def build_product_descriptions(path: Path) -> None:
    wb = new_workbook()
    ws = wb.active
    ws.title = "Products"

    ws["A1"] = "Template"
    ws["A1"].font = BOLD
    ws["A1"].alignment = TOP
    ws["B1"] = PRODUCT_TEMPLATE
    ws["B1"].alignment = WRAP_TOP
    ws.row_dimensions[1].height = 48
    # Row 2 stays empty; the table starts at row 3.
    write_header(ws, 3, ["Product Name", "Category", "Material", "Price"])
    for offset, (name, category, material, price) in enumerate(PRODUCTS):
        row = 4 + offset
        ws.cell(row=row, column=1, value=name)
        ws.cell(row=row, column=2, value=category)
        ws.cell(row=row, column=3, value=material)
        price_cell = ws.cell(row=row, column=4, value=price)
        price_cell.number_format = '"$"#,##0.00'

    # Column E is where the tool will add "response"; give it room in advance.
    set_widths(ws, {"A": 26, "B": 52, "C": 22, "D": 10, "E": 70})
    ws.freeze_panes = "A4"
    save_deterministic(wb, path)


# --------------------------------------------------------------------------- 2. support tickets

TICKET_TEMPLATE = (
    "Classify this support ticket from a {{ customer_tier }} customer into one category: "
    "billing, bug, feature_request, account, other. Reply with the category word only.\n"
    "Subject: {{ subject }}\n"
    "Message: {{ message }}\n"
    "Category:"
)

# (Ticket ID, Customer Tier, Subject, Message, response or None)
TICKETS: list[tuple[str, str, str, str, str | None]] = [
    (
        "T-1001",
        "Free",
        "Charged twice this month",
        "My card was charged two times for the March subscription. Please refund one.",
        None,
    ),
    (
        "T-1002",
        "Pro",
        "Invoice shows wrong VAT",
        "The PDF invoice lists 25% VAT but our company is VAT-exempt.",
        "billing",
    ),
    (
        "T-1003",
        "Enterprise",
        "Export to CSV crashes",
        "Clicking Export on a report with more than 5000 rows shows a blank error page.",
        None,
    ),
    (
        "T-1004",
        "Free",
        "Dark mode please",
        "Would love a dark theme for the dashboard, the white screen is harsh at night.",
        None,
    ),
    (
        "T-1005",
        "Pro",
        "Cannot reset password",
        "The reset link in the email says it has expired even when I click it right away.",
        None,
    ),
    (
        "T-1006",
        "Enterprise",
        "Sync stops after update",
        "Since version 4.2 the calendar sync stops every few hours until we restart the app.",
        "bug",
    ),
    (
        "T-1007",
        "Pro",
        "Add more seats to our plan",
        "We hired three people and need to add seats. Where do I change the plan size?",
        None,
    ),
    (
        "T-1008",
        "Free",
        "Delete my account",
        "Please close my account and remove all stored projects.",
        "#ERROR: timeout",
    ),
    (
        "T-1009",
        "Enterprise",
        "API for bulk tagging",
        "Could you add an API endpoint to tag many records at once instead of one by one?",
        None,
    ),
    (
        "T-1010",
        "Pro",
        "Question about your office hours",
        "Is your support team available on public holidays in Germany?",
        None,
    ),
]


def build_support_tickets(path: Path) -> None:
    wb = new_workbook()
    ws = wb.active
    ws.title = "Tickets"  # first sheet

    headers = ["Ticket ID", "Customer Tier", "Subject", "Message", "response"]
    for col, name in enumerate(headers, start=1):
        ws.cell(row=1, column=col, value=name)
    for offset, ticket in enumerate(TICKETS):
        row = 2 + offset
        for col, value in enumerate(ticket, start=1):
            cell = ws.cell(row=row, column=col, value=value)
            cell.alignment = WRAP_TOP if col == 4 else TOP

    last_row = 1 + len(TICKETS)
    table = Table(displayName="Tickets", ref=f"A1:E{last_row}")
    table.tableStyleInfo = TableStyleInfo(
        name="TableStyleMedium2",
        showFirstColumn=False,
        showLastColumn=False,
        showRowStripes=True,
        showColumnStripes=False,
    )
    ws.add_table(table)
    set_widths(ws, {"A": 11, "B": 15, "C": 32, "D": 60, "E": 18})
    ws.freeze_panes = "A2"

    prompt = wb.create_sheet("Prompt")
    prompt["A1"] = "The template used for every ticket:"
    prompt["A1"].font = BOLD
    prompt["A2"] = TICKET_TEMPLATE
    prompt["A2"].alignment = WRAP_TOP
    prompt.column_dimensions["A"].width = 90
    prompt.row_dimensions[2].height = 80

    wb.defined_names["prompt_template"] = DefinedName("prompt_template", attr_text="'Prompt'!$A$2")
    save_deterministic(wb, path)


# --------------------------------------------------------------------------- 3. translation

TRANSLATION_TEMPLATE = (
    "Translate into {{ target_language }}. Reply with the translation only: {{ source_text }}"
)

# (Source Text, Target Language)
PHRASES: list[tuple[str, str]] = [
    ("Where is the train station?", "French"),
    ("The meeting has moved to Thursday.", "Spanish"),
    ("Please keep the door closed.", "German"),
    ("Thank you for your patience.", "Italian"),
    ("お会計をお願いします。", "English"),
    ("=SUM is a spreadsheet function", "Portuguese"),
    ("Good morning, everyone!", "Dutch"),
    ("The museum opens at nine.", "French"),
    ("Do you have a table for two?", "Spanish"),
    ("Café au lait, s'il vous plaît.", "German"),
]

CONF_ROWS: list[tuple[str, str | int]] = [
    ("template", TRANSLATION_TEMPLATE),
    ("output_column", "Translation"),
    ("temperature", 0),
    ("max_tokens", 60),
]


def build_translation(path: Path) -> None:
    wb = new_workbook()
    ws = wb.active
    ws.title = "Phrases"  # first sheet

    write_header(ws, 1, ["Source Text", "Target Language"])
    for offset, (text, language) in enumerate(PHRASES):
        row = 2 + offset
        cell = ws.cell(row=row, column=1, value=text)
        if text.startswith("="):
            # openpyxl treats "=..." as a formula; force a plain text cell instead.
            cell.data_type = "s"
            cell.quotePrefix = True  # Excel shows it as '=... (text), as if typed that way
        ws.cell(row=row, column=2, value=language)
    set_widths(ws, {"A": 40, "B": 18, "C": 50})

    write_conf(wb, CONF_ROWS)
    save_deterministic(wb, path)


# --------------------------------------------------------------------------- 4. reviews (CSV)

REVIEW_TEMPLATE = (
    "Summarize this {{ stars }}-star review of {{ product }} in five words or fewer: "
    "{{ review_text }}"
)

REVIEWS: list[tuple[int, str, int, str]] = [
    (1, "Trailhead Water Bottle", 5, "Keeps water cold all day, even in a hot car."),
    (2, "Cloudrest Pillow", 2, "Too firm for me and it still smells of foam after a week."),
    (
        3,
        "Harbor Rain Jacket",
        4,
        'Stayed dry in a downpour, but the "packable" hood is tiny.\n'
        "Sizing runs small, so order one up.",
    ),
    (4, "Nimbus Wireless Earbuds", 3, "Good sound, battery lasts about four hours."),
    (5, "Ember Cast Iron Skillet", 5, "Heavy, heats evenly, and came well seasoned."),
    (6, "Pebble Desk Lamp", 1, "Arrived cracked and the switch stopped working."),
    (7, "Summit Yoga Mat", 4, "Great grip; a bit heavy to carry to class."),
    (8, "Atlas Weekender Bag", 5, "Fits three days of clothes and looks better with age."),
    (9, "Sprout Seed Starter Kit", 3, "Half of the seeds sprouted. Instructions were vague."),
    (10, "Quill Fountain Pen", 2, "Nib scratches and the ink skips on every page."),
]


def build_reviews(csv_path: Path, template_path: Path) -> None:
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["review_id", "product", "stars", "review_text"])
        writer.writerows(REVIEWS)
    template_path.write_text(REVIEW_TEMPLATE + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- 5. feedback (chained)

SUMMARY_TEMPLATE = "Summarize this customer feedback in one short sentence: {{ feedback }}"
REPLY_TEMPLATE = (
    "Write a one-sentence reply to {{ customer }}, whose feedback was: {{ summary }}"
)

FEEDBACK: list[tuple[str, str]] = [
    ("Ana", "The app logs me out every time I switch to another app. Very annoying."),
    ("Ben", "Delivery came a day early and the packaging was lovely."),
    ("Chloe", "I was charged twice for one order and nobody answers my emails."),
    ("Dev", "Would love a dark mode, my eyes hurt at night."),
    ("Emma", "The size guide is wrong: the medium fits like a small."),
    ("Farid", "Support fixed my account problem within ten minutes. Thank you!"),
]


TRIAGE_CONF: list[tuple[str, str]] = [
    ("template.triage", "Triage this customer feedback: {{ feedback }}"),
    ("fields.triage", "sentiment (positive|neutral|negative), urgent (boolean), "
                      "score (integer)"),
]


def build_feedback(path: Path) -> None:
    wb = new_workbook()
    ws = wb.active
    ws.title = "Feedback"

    ws["A1"] = "Templates"
    ws["A1"].font = BOLD
    ws["C1"] = SUMMARY_TEMPLATE
    ws["D1"] = REPLY_TEMPLATE
    for ref in ("C1", "D1"):
        ws[ref].alignment = WRAP_TOP
    ws.row_dimensions[1].height = 48
    write_header(ws, 2, ["Customer", "Feedback", "summary", "reply"])
    for offset, (customer, text) in enumerate(FEEDBACK):
        ws.cell(row=3 + offset, column=1, value=customer)
        ws.cell(row=3 + offset, column=2, value=text)
    set_widths(ws, {"A": 12, "B": 60, "C": 50, "D": 60, "E": 12, "F": 10, "G": 8})
    ws.freeze_panes = "A3"

    write_conf(wb, TRIAGE_CONF)
    save_deterministic(wb, path)


# --------------------------------------------------------------------------- 6, 7. seed templates

# The templates of the "Batch Prompt Processor" this project comes from, as issue 16 quotes
# them. Its quote elides sections 3-7 of the first and gives the second only in outline;
# those parts are reconstructed from what the issue says (see README.md here).
ORCHESTRATION_TEMPLATE = """<system>
You are an expert AI Strategist tasked with developing a comprehensive AI orchestration plan for a
given business challenge. Your plan should cover technical integration, data governance, ethical
considerations, team enablement, and measurable outcomes.
</system>

<context>
Business Challenge: {{business_challenge}}
Current AI Capabilities (if any): {{current_ai_capabilities}}
Key Stakeholders: {{key_stakeholders}}
Desired Business Outcome: {{desired_business_outcome}}
Available Resources (budget, team size, data access): {{available_resources}}
</context>

<output_format>
Provide a structured AI orchestration strategy document with the following sections:
1.  **Executive Summary:** Briefly outline the proposed strategy and its expected impact.
2.  **Challenge Analysis:** Detail the business challenge and how AI can address it.
3.  **Technical Integration Plan:** Describe the AI models and tools, and how they connect.
4.  **Data Governance Framework:** Define data sources, quality, access and compliance.
5.  **Ethical Considerations:** Identify risks (bias, privacy, transparency) and mitigations.
6.  **Team Enablement:** Outline the roles, skills, training and change management the team needs.
7.  **Measurable Outcomes:** Specify the KPIs and success metrics, with targets.
8.  **Phased Implementation Roadmap:** Suggest a timeline and key milestones.
</output_format>"""

ORCHESTRATION_HEADERS = ["Business Challenge", "Current AI Capabilities", "Key Stakeholders",
                         "Desired Business Outcome", "Available Resources"]
ORCHESTRATION_ROWS = [
    ("Customer support tickets take 3 days to resolve on average",
     "A rules-based chatbot on the help page", "Head of Support, CTO, CFO",
     "Cut resolution time to under 24 hours", "$250k, 4 engineers, 5 years of ticket history"),
    ("Inventory write-offs from perishable goods in 40 grocery stores",
     "None", "COO, store managers, supply chain lead",
     "Reduce spoilage by 30% within a year", "$400k, 2 data scientists, POS and delivery data"),
    ("Manual invoice processing in accounts payable", "OCR for scanned invoices",
     "CFO, AP team lead, IT security", "Process 80% of invoices without human touch",
     "$150k, 1 ML engineer, 200k archived invoices"),
    ("High churn among first-year subscribers of a meal-kit service",
     "A monthly churn report in the BI tool", "CMO, product manager, data team",
     "Lower first-year churn from 45% to 30%", "$300k, 3 analysts, CRM and order history"),
    ("Slow first review of loan applications at a regional bank",
     "Credit scoring model from a vendor", "Chief Risk Officer, compliance, branch network",
     "Decide 70% of small loans within one hour", "$600k, 5 engineers, 10 years of loan files"),
    ("Unplanned downtime of packaging lines in a beverage plant",
     "Sensors on motors, no analytics", "Plant manager, maintenance lead, VP operations",
     "Halve unplanned downtime", "$350k, 2 engineers, 18 months of sensor data"),
    ("Nurses spend two hours a shift on documentation", "Speech-to-text pilot in one ward",
     "Chief Nursing Officer, CMIO, privacy officer",
     "Give nurses back one hour per shift", "$500k, EHR vendor support, clinical notes"),
    ("Long lead times answering public tenders at an engineering firm",
     "Staff use ChatGPT informally", "Bid managers, legal, managing director",
     "Submit 50% more tenders with the same team", "$120k, 1 developer, past bids library"),
    ("Fraudulent returns at an online fashion retailer", "Manual review of flagged orders",
     "Head of e-commerce, fraud team, customer service",
     "Cut return fraud losses by 40%", "$200k, 2 data scientists, order and return logs"),
    ("Students drop out of online courses in the first month",
     "Learning platform analytics dashboard", "Dean of online learning, instructors, IT",
     "Raise first-month completion from 55% to 75%", "$180k, 2 developers, clickstream data"),
    ("Field technicians lack answers on site for 300 equipment models",
     "PDF manuals on a shared drive", "Service director, technicians, product engineering",
     "Fix 85% of faults on the first visit", "$220k, 3 engineers, 12,000 manual pages"),
    ("Marketing content is slow to localize into 9 languages",
     "Machine translation for internal documents", "CMO, regional marketing leads, legal",
     "Launch campaigns in all markets the same week", "$160k, agency budget, brand guidelines"),
]

INTEGRATION_TEMPLATE = """<system>
You are an experienced AI Solutions Architect tasked with designing the integration of a new AI
model into an existing software system. Your design should be secure, reliable, observable and
ready for production.
</system>

<context>
New AI Model Name: {{new_ai_model_name}}
Model Purpose: {{model_purpose}}
Existing System Components: {{existing_components}}
Data Input Format: {{data_input_format}}
Model Output Format: {{model_output_format}}
Security Standards: {{security_standards}}
</context>

<output_format>
Provide a technical integration design with the following sections:
1.  **Model Overview:** Summarize what the model does and where it fits in the system.
2.  **Integration Points:** Identify the components that call the model or consume its output.
3.  **Data Flow:** Describe how data moves from input to model to output, step by step.
4.  **API Specifications:** Define the endpoints, request and response formats, and authentication.
5.  **Monitoring and Logging:** Specify the metrics, logs and alerts that keep the model healthy.
6.  **Error Handling and Resilience:** Explain timeouts, retries, fallbacks and degradation.
7.  **Scalability:** Describe how the integration scales with load, and its cost drivers.
</output_format>"""

INTEGRATION_HEADERS = ["New AI Model Name", "Model Purpose", "Existing Components",
                       "Data Input Format", "Model Output Format", "Security Standards"]
INTEGRATION_ROWS = [
    ("TicketTriage-v2", "Route support tickets to the right team",
     "Zendesk, Kafka, Python microservices", "JSON ticket with subject and body",
     "Team label and confidence", "SOC 2, PII redaction"),
    ("InvoiceReader", "Extract fields from supplier invoices", "SAP S/4HANA, SharePoint",
     "PDF and scanned TIFF", "JSON with vendor, amounts, dates", "ISO 27001"),
    ("ChurnScore", "Predict which subscribers will cancel next month",
     "Snowflake, dbt, Salesforce", "Daily customer feature table", "Probability per customer",
     "GDPR, role-based access"),
    ("FraudSense", "Flag suspicious card transactions in real time",
     "Java payment gateway, Redis, PostgreSQL", "Transaction event stream",
     "Risk score and reason codes", "PCI DSS"),
    ("DocSummarizer", "Summarize clinical notes for handover", "Epic EHR, FHIR API",
     "HL7 FHIR DocumentReference", "Plain-text summary under 200 words", "HIPAA"),
    ("DefectVision", "Detect defects on a bottling line camera feed",
     "PLC, edge gateway, MES", "1080p video frames at 30 fps", "Bounding boxes and defect class",
     "IEC 62443"),
    ("ContractQA", "Answer questions about supplier contracts", "SharePoint, Teams, Azure AD",
     "Word and PDF contracts", "Answer with cited clauses", "Data stays in EU region"),
    ("DemandCast", "Forecast weekly demand per store and product",
     "Oracle Retail, Airflow, BigQuery", "Sales history and promotions CSV",
     "Forecast with 80% interval", "Internal data classification policy"),
    ("VoiceNotes", "Transcribe and tag sales call recordings", "Gong, HubSpot, AWS S3",
     "MP3 audio up to 60 minutes", "Transcript, topics and next steps", "SOC 2, call consent"),
    ("CodeReviewBot", "Comment on pull requests with likely bugs",
     "GitHub Enterprise, Jenkins", "Unified diff of a pull request",
     "Review comments per file and line", "No code leaves the VPC"),
    ("RouteOptimizer", "Plan delivery routes for 200 vans each morning",
     "Fleet telematics, .NET dispatch system", "Orders and vehicle positions as JSON",
     "Ordered stop list per van", "ISO 27001, driver privacy"),
    ("ResumeMatch", "Rank applicants against a job description", "Workday, internal HR portal",
     "Resume PDF and job posting text", "Match score and skill gaps", "EEOC, bias audit yearly"),
]


def _seed_sample(path: Path, sheet: str, template: str, headers: list[str],
                 rows: Sequence[Sequence[str]]) -> None:
    """A user's own layout: a Template label, the template beside it, the table below."""
    wb = new_workbook()
    ws = wb.active
    ws.title = sheet
    ws["A1"] = "Template"
    ws["A1"].font = BOLD
    ws["A1"].alignment = TOP
    ws["B1"] = template
    ws["B1"].alignment = WRAP_TOP
    ws.row_dimensions[1].height = 300
    write_header(ws, 3, headers)
    for offset, values in enumerate(rows):
        for col, value in enumerate(values, start=1):
            ws.cell(row=4 + offset, column=col, value=value).alignment = WRAP_TOP
    set_widths(ws, {letter: 30 for letter in "ABCDEF"} | {"G": 90})
    ws.freeze_panes = "A4"
    save_deterministic(wb, path)


def build_orchestration(path: Path) -> None:
    _seed_sample(path, "Strategy", ORCHESTRATION_TEMPLATE, ORCHESTRATION_HEADERS,
                 ORCHESTRATION_ROWS)


def build_integration(path: Path) -> None:
    _seed_sample(path, "Integration", INTEGRATION_TEMPLATE, INTEGRATION_HEADERS,
                 INTEGRATION_ROWS)


# --------------------------------------------------------------------------- main


def main() -> None:
    build_product_descriptions(HERE / "product_descriptions.xlsx")
    build_support_tickets(HERE / "support_tickets.xlsx")
    build_translation(HERE / "translation.xlsx")
    build_reviews(HERE / "reviews.csv", HERE / "reviews.prompt.txt")
    build_feedback(HERE / "customer_feedback.xlsx")
    build_orchestration(HERE / "ai_orchestration_strategy.xlsx")
    build_integration(HERE / "ai_model_integration.xlsx")
    for name in (
        "product_descriptions.xlsx",
        "support_tickets.xlsx",
        "translation.xlsx",
        "reviews.csv",
        "reviews.prompt.txt",
        "customer_feedback.xlsx",
        "ai_orchestration_strategy.xlsx",
        "ai_model_integration.xlsx",
    ):
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
