//! The one catalogue of Bitrix24 events: for each, its family, the kind of entity it is about,
//! where that entity's id is in `data`, how to fetch it, whether it is a delete and whether
//! `relay bind` binds it. Routing, the id parser, enrichment and the bind list all read it.

use crate::event::Family;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// What an event is about. Separate id sequences get separate kinds (a requisite and a bank
/// detail may both be 5), so this is part of the snapshot key and of the forwarded body.
/// SalesMan kinds are here too: its event names start with them (`client.add` -> `client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    Deal,
    Lead,
    Contact,
    Company,
    Requisite,
    Bankdetail,
    /// A requisite's (or lead's) address: no id of its own, keyed by type and owner.
    Address,
    /// The old invoice (`crm.invoice.*`).
    Invoice,
    /// The new invoice: the smart process with entityTypeId 31 (`crm.item.*`).
    SmartInvoice,
    Activity,
    Task,
    TaskComment,
    /// A user-field definition, not a record (`FIELDS.ID` is the field's id).
    Userfield,
    /// A row of the recurring-deal settings table (not a deal).
    DealRecurring,
    /// A row of the recurring-invoice settings table (not an invoice).
    InvoiceRecurring,
    /// The app itself on a portal (install, update, uninstall, offline wake-up).
    App,
    // SalesMan kinds not named above.
    Client,
    Person,
    Entry,
    History,
    Contract,
    Akt,
}

impl EntityType {
    pub fn as_str(self) -> &'static str {
        use EntityType::*;
        match self {
            Deal => "deal",
            Lead => "lead",
            Contact => "contact",
            Company => "company",
            Requisite => "requisite",
            Bankdetail => "bankdetail",
            Address => "address",
            Invoice => "invoice",
            SmartInvoice => "smart_invoice",
            Activity => "activity",
            Task => "task",
            TaskComment => "task_comment",
            Userfield => "userfield",
            DealRecurring => "deal_recurring",
            InvoiceRecurring => "invoice_recurring",
            App => "app",
            Client => "client",
            Person => "person",
            Entry => "entry",
            History => "history",
            Contract => "contract",
            Akt => "akt",
        }
    }

    /// A SalesMan event's kind: its name up to the first dot (`client.change.recv` -> client).
    /// The kind a SalesMan event is about, as `parse::salesman::entity_kind` names it.
    pub fn of_salesman_event(event: &str) -> Option<EntityType> {
        use EntityType::*;
        let kind = crate::parse::salesman::entity_kind(event)?;
        [
            Client, Person, Deal, Lead, Entry, Invoice, Task, History, Contract, Akt,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an event's entity id is in `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdAt {
    /// App events concern the portal, not an entity.
    Nothing,
    /// `data[FIELDS][<key>]`.
    Fields(&'static str),
    /// Task events: `data[FIELDS_AFTER][ID]`, on delete `data[FIELDS_BEFORE][ID]`.
    TaskFields,
    /// Address events carry no id: `<TYPE_ID>-<ENTITY_TYPE_ID>-<ENTITY_ID>` of `data[FIELDS]`.
    AddressKey,
}

/// A value of a fetch call's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// The entity id.
    Id,
    Const(&'static str),
    /// `data[FIELDS][<key>]` of the event.
    Field(&'static str),
}

/// Where the entity is in a method's `result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pick {
    Result,
    /// `result[<key>]` (`tasks.task.get` -> `task`, `crm.item.get` -> `item`).
    Key(&'static str),
    /// The first row of a list (`crm.address.list`).
    First,
}

/// The REST call that reads an event's entity. A parameter name `filter[X]` nests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub method: &'static str,
    pub params: &'static [(&'static str, Arg)],
    pub pick: Pick,
}

/// One Bitrix24 event the relay takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Upper case, as Bitrix24 stores names on bind.
    pub event: &'static str,
    pub family: Family,
    pub entity_type: EntityType,
    pub id: IdAt,
    /// `None`: forwarded as it came (no read method, or nothing to read).
    pub fetch: Option<Fetch>,
    pub delete: bool,
    /// Whether `relay bind` binds it (ONAPPINSTALL and ONAPPTEST are set in the app's
    /// settings and cannot be bound with `event.bind`).
    pub bind: bool,
    /// The base `ONCRMDYNAMICITEM*` names carry the type in `data[FIELDS][ENTITY_TYPE_ID]`:
    /// only this type is taken.
    pub only_type: Option<&'static str>,
    /// The page of `bitrix24/b24restdocs` this entry follows.
    pub doc: &'static str,
}

/// A Bitrix24 event in the docs that the relay refuses on purpose, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub event: &'static str,
    pub reason: &'static str,
    pub doc: &'static str,
}

/// The entity type id of smart invoices (`crm.item.*` with `entityTypeId: 31`).
pub const SMART_INVOICE_TYPE_ID: &str = "31";

const fn fetch(
    method: &'static str,
    params: &'static [(&'static str, Arg)],
    pick: Pick,
) -> Option<Fetch> {
    Some(Fetch {
        method,
        params,
        pick,
    })
}

const BY_ID: &[(&str, Arg)] = &[("id", Arg::Id)];
const ITEM_31: &[(&str, Arg)] = &[
    ("entityTypeId", Arg::Const(SMART_INVOICE_TYPE_ID)),
    ("id", Arg::Id),
];
const TASK: &[(&str, Arg)] = &[("taskId", Arg::Id)];
const ADDRESS: &[(&str, Arg)] = &[
    ("filter[TYPE_ID]", Arg::Field("TYPE_ID")),
    ("filter[ENTITY_TYPE_ID]", Arg::Field("ENTITY_TYPE_ID")),
    ("filter[ENTITY_ID]", Arg::Field("ENTITY_ID")),
];

/// An entity event: `FIELDS.ID`, read with `method {id}`, bound online and offline.
const fn crm(
    event: &'static str,
    family: Family,
    entity_type: EntityType,
    method: &'static str,
    doc: &'static str,
) -> Entry {
    Entry {
        event,
        family,
        entity_type,
        id: IdAt::Fields("ID"),
        fetch: fetch(method, BY_ID, Pick::Result),
        delete: false,
        bind: true,
        only_type: None,
        doc,
    }
}

/// The delete of an entity: its id, nothing to read.
const fn gone(
    event: &'static str,
    family: Family,
    entity_type: EntityType,
    doc: &'static str,
) -> Entry {
    Entry {
        event,
        family,
        entity_type,
        id: IdAt::Fields("ID"),
        fetch: None,
        delete: true,
        bind: true,
        only_type: None,
        doc,
    }
}

/// A user-field event: `FIELDS.ID` is the field's id, read with `<method> {id}`.
const fn userfield(
    event: &'static str,
    family: Family,
    method: &'static str,
    doc: &'static str,
) -> Entry {
    crm(event, family, EntityType::Userfield, method, doc)
}

const fn with_id(mut entry: Entry, id: IdAt) -> Entry {
    entry.id = id;
    entry
}

const fn with_fetch(mut entry: Entry, fetch: Option<Fetch>) -> Entry {
    entry.fetch = fetch;
    entry
}

/// A base dynamic-item name: taken for this type only, and not bound, since `relay bind`
/// binds the type-suffixed name and one change must not arrive twice.
const fn only_type(mut entry: Entry, type_id: &'static str) -> Entry {
    entry.only_type = Some(type_id);
    entry.bind = false;
    entry
}

const fn app(event: &'static str, bind: bool, doc: &'static str) -> Entry {
    Entry {
        event,
        family: Family::App,
        entity_type: EntityType::App,
        id: IdAt::Nothing,
        fetch: None,
        delete: false,
        bind,
        only_type: None,
        doc,
    }
}

use EntityType as E;
use Family as F;

/// Every Bitrix24 event the relay takes. `doc` is relative to the b24restdocs repository.
pub const CATALOGUE: &[Entry] = &[
    // Deals.
    crm("ONCRMDEALADD", F::Deal, E::Deal, "crm.deal.get", "api-reference/crm/deals/events/on-crm-deal-add.md"),
    crm("ONCRMDEALUPDATE", F::Deal, E::Deal, "crm.deal.get", "api-reference/crm/deals/events/on-crm-deal-update.md"),
    gone("ONCRMDEALDELETE", F::Deal, E::Deal, "api-reference/crm/deals/events/on-crm-deal-delete.md"),
    crm("ONCRMDEALMOVETOCATEGORY", F::Deal, E::Deal, "crm.deal.get", "api-reference/crm/deals/events/on-crm-deal-move-to-category.md"),
    userfield("ONCRMDEALUSERFIELDADD", F::Deal, "crm.deal.userfield.get", "api-reference/crm/deals/user-defined-fields/events/on-crm-deal-user-field-add.md"),
    userfield("ONCRMDEALUSERFIELDUPDATE", F::Deal, "crm.deal.userfield.get", "api-reference/crm/deals/user-defined-fields/events/on-crm-deal-user-field-update.md"),
    userfield("ONCRMDEALUSERFIELDSETENUMVALUES", F::Deal, "crm.deal.userfield.get", "api-reference/crm/deals/user-defined-fields/events/on-crm-deal-user-field-set-enum-values.md"),
    gone("ONCRMDEALUSERFIELDDELETE", F::Deal, E::Userfield, "api-reference/crm/deals/user-defined-fields/events/on-crm-deal-user-field-delete.md"),
    // Recurring deals: FIELDS.ID is the settings row, RECURRING_DEAL_ID the template deal;
    // only EXPOSE names a real new deal (FIELDS.DEAL_ID).
    crm("ONCRMDEALRECURRINGADD", F::Deal, E::DealRecurring, "crm.deal.recurring.get", "api-reference/crm/deals/recurring-deals/events/on-crm-deal-recurring-add.md"),
    crm("ONCRMDEALRECURRINGUPDATE", F::Deal, E::DealRecurring, "crm.deal.recurring.get", "api-reference/crm/deals/recurring-deals/events/on-crm-deal-recurring-update.md"),
    gone("ONCRMDEALRECURRINGDELETE", F::Deal, E::DealRecurring, "api-reference/crm/deals/recurring-deals/events/on-crm-deal-recurring-delete.md"),
    with_id(
        crm("ONCRMDEALRECURRINGEXPOSE", F::Deal, E::Deal, "crm.deal.get", "api-reference/crm/deals/recurring-deals/events/on-crm-deal-recurring-expose.md"),
        IdAt::Fields("DEAL_ID"),
    ),
    // Leads.
    crm("ONCRMLEADADD", F::Lead, E::Lead, "crm.lead.get", "api-reference/crm/leads/events/on-crm-lead-add.md"),
    crm("ONCRMLEADUPDATE", F::Lead, E::Lead, "crm.lead.get", "api-reference/crm/leads/events/on-crm-lead-update.md"),
    gone("ONCRMLEADDELETE", F::Lead, E::Lead, "api-reference/crm/leads/events/on-crm-lead-delete.md"),
    userfield("ONCRMLEADUSERFIELDADD", F::Lead, "crm.lead.userfield.get", "api-reference/crm/leads/userfield/events/on-crm-lead-user-field-add.md"),
    userfield("ONCRMLEADUSERFIELDUPDATE", F::Lead, "crm.lead.userfield.get", "api-reference/crm/leads/userfield/events/on-crm-lead-user-field-update.md"),
    userfield("ONCRMLEADUSERFIELDSETENUMVALUES", F::Lead, "crm.lead.userfield.get", "api-reference/crm/leads/userfield/events/on-crm-lead-user-field-set-enum-values.md"),
    gone("ONCRMLEADUSERFIELDDELETE", F::Lead, E::Userfield, "api-reference/crm/leads/userfield/events/on-crm-lead-user-field-delete.md"),
    // Contacts.
    crm("ONCRMCONTACTADD", F::Contact, E::Contact, "crm.contact.get", "api-reference/crm/contacts/events/on-crm-contact-add.md"),
    crm("ONCRMCONTACTUPDATE", F::Contact, E::Contact, "crm.contact.get", "api-reference/crm/contacts/events/on-crm-contact-update.md"),
    gone("ONCRMCONTACTDELETE", F::Contact, E::Contact, "api-reference/crm/contacts/events/on-crm-contact-delete.md"),
    userfield("ONCRMCONTACTUSERFIELDADD", F::Contact, "crm.contact.userfield.get", "api-reference/crm/contacts/userfield/events/on-crm-contact-user-field-add.md"),
    userfield("ONCRMCONTACTUSERFIELDUPDATE", F::Contact, "crm.contact.userfield.get", "api-reference/crm/contacts/userfield/events/on-crm-contact-user-field-update.md"),
    userfield("ONCRMCONTACTUSERFIELDSETENUMVALUES", F::Contact, "crm.contact.userfield.get", "api-reference/crm/contacts/userfield/events/on-crm-contact-user-field-set-enum-values.md"),
    gone("ONCRMCONTACTUSERFIELDDELETE", F::Contact, E::Userfield, "api-reference/crm/contacts/userfield/events/on-crm-contact-user-field-delete.md"),
    // Companies.
    crm("ONCRMCOMPANYADD", F::Company, E::Company, "crm.company.get", "api-reference/crm/companies/events/on-crm-company-add.md"),
    crm("ONCRMCOMPANYUPDATE", F::Company, E::Company, "crm.company.get", "api-reference/crm/companies/events/on-crm-company-update.md"),
    gone("ONCRMCOMPANYDELETE", F::Company, E::Company, "api-reference/crm/companies/events/on-crm-company-delete.md"),
    userfield("ONCRMCOMPANYUSERFIELDADD", F::Company, "crm.company.userfield.get", "api-reference/crm/companies/userfields/events/on-crm-company-user-field-add.md"),
    userfield("ONCRMCOMPANYUSERFIELDUPDATE", F::Company, "crm.company.userfield.get", "api-reference/crm/companies/userfields/events/on-crm-company-user-field-update.md"),
    userfield("ONCRMCOMPANYUSERFIELDSETENUMVALUES", F::Company, "crm.company.userfield.get", "api-reference/crm/companies/userfields/events/on-crm-company-user-field-set-enum-values.md"),
    gone("ONCRMCOMPANYUSERFIELDDELETE", F::Company, E::Userfield, "api-reference/crm/companies/userfields/events/on-crm-company-user-field-delete.md"),
    // Requisites, bank details, addresses.
    crm("ONCRMREQUISITEADD", F::Requisite, E::Requisite, "crm.requisite.get", "api-reference/crm/requisites/events/on-crm-requisite-add.md"),
    crm("ONCRMREQUISITEUPDATE", F::Requisite, E::Requisite, "crm.requisite.get", "api-reference/crm/requisites/events/on-crm-requisite-update.md"),
    gone("ONCRMREQUISITEDELETE", F::Requisite, E::Requisite, "api-reference/crm/requisites/events/on-crm-requisite-delete.md"),
    userfield("ONCRMREQUISITEUSERFIELDADD", F::Requisite, "crm.requisite.userfield.get", "api-reference/crm/requisites/events/on-crm-requisite-user-field-add.md"),
    userfield("ONCRMREQUISITEUSERFIELDUPDATE", F::Requisite, "crm.requisite.userfield.get", "api-reference/crm/requisites/events/on-crm-requisite-user-field-update.md"),
    userfield("ONCRMREQUISITEUSERFIELDSETENUMVALUES", F::Requisite, "crm.requisite.userfield.get", "api-reference/crm/requisites/events/on-crm-requisite-user-field-set-enum-values.md"),
    gone("ONCRMREQUISITEUSERFIELDDELETE", F::Requisite, E::Userfield, "api-reference/crm/requisites/events/on-crm-requisite-user-field-delete.md"),
    crm("ONCRMBANKDETAILADD", F::Requisite, E::Bankdetail, "crm.requisite.bankdetail.get", "api-reference/crm/requisites/events/on-crm-bank-detail-add.md"),
    crm("ONCRMBANKDETAILUPDATE", F::Requisite, E::Bankdetail, "crm.requisite.bankdetail.get", "api-reference/crm/requisites/events/on-crm-bank-detail-update.md"),
    gone("ONCRMBANKDETAILDELETE", F::Requisite, E::Bankdetail, "api-reference/crm/requisites/events/on-crm-bank-detail-delete.md"),
    with_fetch(
        with_id(
            crm("ONCRMADDRESSREGISTER", F::Requisite, E::Address, "crm.address.list", "api-reference/crm/requisites/events/on-crm-address-register.md"),
            IdAt::AddressKey,
        ),
        fetch("crm.address.list", ADDRESS, Pick::First),
    ),
    with_id(
        gone("ONCRMADDRESSUNREGISTER", F::Requisite, E::Address, "api-reference/crm/requisites/events/on-crm-address-unregister.md"),
        IdAt::AddressKey,
    ),
    // Old invoices.
    crm("ONCRMINVOICEADD", F::Invoice, E::Invoice, "crm.invoice.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-add.md"),
    crm("ONCRMINVOICEUPDATE", F::Invoice, E::Invoice, "crm.invoice.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-update.md"),
    crm("ONCRMINVOICESETSTATUS", F::Invoice, E::Invoice, "crm.invoice.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-set-status.md"),
    gone("ONCRMINVOICEDELETE", F::Invoice, E::Invoice, "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-delete.md"),
    userfield("ONCRMINVOICEUSERFIELDADD", F::Invoice, "crm.invoice.userfield.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-user-field-add.md"),
    userfield("ONCRMINVOICEUSERFIELDUPDATE", F::Invoice, "crm.invoice.userfield.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-user-field-update.md"),
    userfield("ONCRMINVOICEUSERFIELDSETENUMVALUES", F::Invoice, "crm.invoice.userfield.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-user-field-set-enum-values.md"),
    gone("ONCRMINVOICEUSERFIELDDELETE", F::Invoice, E::Userfield, "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-user-field-delete.md"),
    // Recurring invoices: FIELDS.ID is the settings row; EXPOSE's INVOICE_ID the new invoice.
    crm("ONCRMINVOICERECURRINGADD", F::Invoice, E::InvoiceRecurring, "crm.invoice.recurring.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-recurring-add.md"),
    crm("ONCRMINVOICERECURRINGUPDATE", F::Invoice, E::InvoiceRecurring, "crm.invoice.recurring.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-recurring-update.md"),
    gone("ONCRMINVOICERECURRINGDELETE", F::Invoice, E::InvoiceRecurring, "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-recurring-delete.md"),
    with_id(
        crm("ONCRMINVOICERECURRINGEXPOSE", F::Invoice, E::Invoice, "crm.invoice.get", "api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-recurring-expose.md"),
        IdAt::Fields("INVOICE_ID"),
    ),
    // Smart invoices, under both names real portals send: the base name with the type in
    // FIELDS.ENTITY_TYPE_ID, and the type-suffixed one.
    only_type(
        with_fetch(
            crm("ONCRMDYNAMICITEMADD", F::Invoice, E::SmartInvoice, "crm.item.get", "api-reference/crm/universal/events/on-crm-dynamic-item-add.md"),
            fetch("crm.item.get", ITEM_31, Pick::Key("item")),
        ),
        SMART_INVOICE_TYPE_ID,
    ),
    only_type(
        with_fetch(
            crm("ONCRMDYNAMICITEMUPDATE", F::Invoice, E::SmartInvoice, "crm.item.get", "api-reference/crm/universal/events/on-crm-dynamic-item-update.md"),
            fetch("crm.item.get", ITEM_31, Pick::Key("item")),
        ),
        SMART_INVOICE_TYPE_ID,
    ),
    only_type(
        gone("ONCRMDYNAMICITEMDELETE", F::Invoice, E::SmartInvoice, "api-reference/crm/universal/events/on-crm-dynamic-item-delete.md"),
        SMART_INVOICE_TYPE_ID,
    ),
    with_fetch(
        crm("ONCRMDYNAMICITEMADD_31", F::Invoice, E::SmartInvoice, "crm.item.get", "api-reference/crm/universal/events/on-crm-dynamic-item-add.md"),
        fetch("crm.item.get", ITEM_31, Pick::Key("item")),
    ),
    with_fetch(
        crm("ONCRMDYNAMICITEMUPDATE_31", F::Invoice, E::SmartInvoice, "crm.item.get", "api-reference/crm/universal/events/on-crm-dynamic-item-update.md"),
        fetch("crm.item.get", ITEM_31, Pick::Key("item")),
    ),
    gone("ONCRMDYNAMICITEMDELETE_31", F::Invoice, E::SmartInvoice, "api-reference/crm/universal/events/on-crm-dynamic-item-delete.md"),
    // CRM activities and tasks: separate id sequences in one family.
    crm("ONCRMACTIVITYADD", F::Activity, E::Activity, "crm.activity.get", "api-reference/crm/timeline/activities/events/on-crm-activity-add.md"),
    crm("ONCRMACTIVITYUPDATE", F::Activity, E::Activity, "crm.activity.get", "api-reference/crm/timeline/activities/events/on-crm-activity-update.md"),
    gone("ONCRMACTIVITYDELETE", F::Activity, E::Activity, "api-reference/crm/timeline/activities/events/on-crm-activity-delete.md"),
    with_fetch(
        with_id(
            crm("ONTASKADD", F::Activity, E::Task, "tasks.task.get", "api-reference/tasks/events-tasks/on-task-add.md"),
            IdAt::TaskFields,
        ),
        fetch("tasks.task.get", TASK, Pick::Key("task")),
    ),
    with_fetch(
        with_id(
            crm("ONTASKUPDATE", F::Activity, E::Task, "tasks.task.get", "api-reference/tasks/events-tasks/on-task-update.md"),
            IdAt::TaskFields,
        ),
        fetch("tasks.task.get", TASK, Pick::Key("task")),
    ),
    with_id(
        gone("ONTASKDELETE", F::Activity, E::Task, "api-reference/tasks/events-tasks/on-task-delete.md"),
        IdAt::TaskFields,
    ),
    // Task comments: FIELDS_AFTER.ID is the comment's id (TASK_ID its task). Not fetched:
    // forwarded as they came, under their own kind so they never touch a task's snapshot.
    with_fetch(
        with_id(
            crm("ONTASKCOMMENTADD", F::Activity, E::TaskComment, "-", "api-reference/tasks/comment-item/events-comment/on-task-comment-add.md"),
            IdAt::TaskFields,
        ),
        None,
    ),
    with_fetch(
        with_id(
            crm("ONTASKCOMMENTUPDATE", F::Activity, E::TaskComment, "-", "api-reference/tasks/comment-item/events-comment/on-task-comment-update.md"),
            IdAt::TaskFields,
        ),
        None,
    ),
    with_id(
        gone("ONTASKCOMMENTDELETE", F::Activity, E::TaskComment, "api-reference/tasks/comment-item/events-comment/on-task-comment-delete.md"),
        IdAt::TaskFields,
    ),
    // The app itself.
    app("ONAPPINSTALL", false, "api-reference/common/events/on-app-install.md"),
    app("ONAPPUPDATE", true, "api-reference/common/events/on-app-update.md"),
    app("ONAPPUNINSTALL", true, "api-reference/common/events/on-app-uninstall.md"),
    // Sent by the app's settings page ("test the handler"); not in the docs' event list.
    app("ONAPPTEST", false, "api-reference/events/index.md"),
    // Bound by `relay bind --offline` to the app URL only: see `offline_wake_up`.
    app("ONOFFLINEEVENT", false, "api-reference/events/on-offline-event.md"),
];

/// Bitrix24 events in the docs the relay does not take, each with the reason.
pub const REFUSED: &[Refused] = &[
    Refused { event: "ONAPPMETHODCONFIRM", reason: "method-permission prompts are for the app's UI, not CRM data", doc: "api-reference/common/events/on-app-method-confirm.md" },
    Refused { event: "ONAPPPAYMENT", reason: "Marketplace billing is not CRM data", doc: "api-reference/common/events/on-app-payment.md" },
    Refused { event: "ONUSERADD", reason: "portal users are not CRM entities", doc: "api-reference/common/events/on-user-add.md" },
    Refused { event: "ONCRMCURRENCYADD", reason: "currencies are settings, not CRM records", doc: "api-reference/crm/currency/events/on-crm-currency-add.md" },
    Refused { event: "ONCRMCURRENCYUPDATE", reason: "currencies are settings, not CRM records", doc: "api-reference/crm/currency/events/on-crm-currency-update.md" },
    Refused { event: "ONCRMCURRENCYDELETE", reason: "currencies are settings, not CRM records", doc: "api-reference/crm/currency/events/on-crm-currency-delete.md" },
    Refused { event: "ONCRMDOCUMENTGENERATORDOCUMENTADD", reason: "generated documents have no family (SalesMan's document family is contracts and acts)", doc: "api-reference/crm/document-generator/documents/events/on-crm-document-generator-document-add.md" },
    Refused { event: "ONCRMDOCUMENTGENERATORDOCUMENTUPDATE", reason: "generated documents have no family (SalesMan's document family is contracts and acts)", doc: "api-reference/crm/document-generator/documents/events/on-crm-document-generator-document-update.md" },
    Refused { event: "ONCRMDOCUMENTGENERATORDOCUMENTDELETE", reason: "generated documents have no family (SalesMan's document family is contracts and acts)", doc: "api-reference/crm/document-generator/documents/events/on-crm-document-generator-document-delete.md" },
    Refused { event: "ONCRMMEASUREADD", reason: "units of measure are outdated catalogue settings", doc: "api-reference/crm/outdated/measure/events/on-crm-measure-add.md" },
    Refused { event: "ONCRMMEASUREUPDATE", reason: "units of measure are outdated catalogue settings", doc: "api-reference/crm/outdated/measure/events/on-crm-measure-update.md" },
    Refused { event: "ONCRMMEASUREDELETE", reason: "units of measure are outdated catalogue settings", doc: "api-reference/crm/outdated/measure/events/on-crm-measure-delete.md" },
    Refused { event: "ONCRMPRODUCTSECTIONADD", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/product-section/events/on-crm-product-section-add.md" },
    Refused { event: "ONCRMPRODUCTSECTIONUPDATE", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/product-section/events/on-crm-product-section-update.md" },
    Refused { event: "ONCRMPRODUCTSECTIONDELETE", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/product-section/events/on-crm-product-section-delete.md" },
    Refused { event: "ONCRMPRODUCTADD", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/products/events-custom/on-crm-product-add.md" },
    Refused { event: "ONCRMPRODUCTUPDATE", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/products/events-custom/on-crm-product-update.md" },
    Refused { event: "ONCRMPRODUCTDELETE", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/products/events-custom/on-crm-product-delete.md" },
    Refused { event: "ONCRMPRODUCTPROPERTYADD", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/products/events-custom/on-crm-product-property-add.md" },
    Refused { event: "ONCRMPRODUCTPROPERTYUPDATE", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/products/events-custom/on-crm-product-property-update.md" },
    Refused { event: "ONCRMPRODUCTPROPERTYDELETE", reason: "the product catalogue has no family", doc: "api-reference/crm/outdated/products/events-custom/on-crm-product-property-delete.md" },
    Refused { event: "ONCRMQUOTEADD", reason: "estimates (quotes) have no family", doc: "api-reference/crm/quote/events/on-crm-quote-add.md" },
    Refused { event: "ONCRMQUOTEUPDATE", reason: "estimates (quotes) have no family", doc: "api-reference/crm/quote/events/on-crm-quote-update.md" },
    Refused { event: "ONCRMQUOTEDELETE", reason: "estimates (quotes) have no family", doc: "api-reference/crm/quote/events/on-crm-quote-delete.md" },
    Refused { event: "ONCRMQUOTEUSERFIELDADD", reason: "estimates (quotes) have no family", doc: "api-reference/crm/quote/user-field/events/on-crm-quote-user-field-add.md" },
    Refused { event: "ONCRMQUOTEUSERFIELDUPDATE", reason: "estimates (quotes) have no family", doc: "api-reference/crm/quote/user-field/events/on-crm-quote-user-field-update.md" },
    Refused { event: "ONCRMQUOTEUSERFIELDDELETE", reason: "estimates (quotes) have no family", doc: "api-reference/crm/quote/user-field/events/on-crm-quote-user-field-delete.md" },
    Refused { event: "ONCRMQUOTEUSERFIELDSETENUMVALUES", reason: "estimates (quotes) have no family", doc: "api-reference/crm/quote/user-field/events/on-crm-quote-user-field-set-enum-values.md" },
    Refused { event: "ONCRMTIMELINECOMMENTADD", reason: "timeline comments have no family yet", doc: "api-reference/crm/timeline/comments/events/on-Crm-Timeline-Comment-Add.md" },
    Refused { event: "ONCRMTIMELINECOMMENTUPDATE", reason: "timeline comments have no family yet", doc: "api-reference/crm/timeline/comments/events/on-Crm-Timeline-Comment-Update.md" },
    Refused { event: "ONCRMTIMELINECOMMENTDELETE", reason: "timeline comments have no family yet", doc: "api-reference/crm/timeline/comments/events/on-Crm-Timeline-Comment-Delete.md" },
    Refused { event: "ONCRMTYPEADD", reason: "smart-process types are settings, not records", doc: "api-reference/crm/universal/events/type/on-crm-type-add.md" },
    Refused { event: "ONCRMTYPEUPDATE", reason: "smart-process types are settings, not records", doc: "api-reference/crm/universal/events/type/on-crm-type-update.md" },
    Refused { event: "ONCRMTYPEDELETE", reason: "smart-process types are settings, not records", doc: "api-reference/crm/universal/events/type/on-crm-type-delete.md" },
    Refused { event: "ONCRMTYPEUSERFIELDADD", reason: "the event does not say which smart process (or invoice) the field is of by name", doc: "api-reference/crm/universal/userfieldconfig/events/on-crm-type-user-field-add.md" },
    Refused { event: "ONCRMTYPEUSERFIELDUPDATE", reason: "the event does not say which smart process (or invoice) the field is of by name", doc: "api-reference/crm/universal/userfieldconfig/events/on-crm-type-user-field-update.md" },
    Refused { event: "ONCRMTYPEUSERFIELDDELETE", reason: "the event does not say which smart process (or invoice) the field is of by name", doc: "api-reference/crm/universal/userfieldconfig/events/on-crm-type-user-field-delete.md" },
    Refused { event: "ONCRMTYPEUSERFIELDSETENUMVALUES", reason: "the event does not say which smart process (or invoice) the field is of by name", doc: "api-reference/crm/universal/userfieldconfig/events/on-crm-type-user-field-set-enum-values.md" },
];

/// Why a Bitrix24 event has no catalogue entry it can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueMiss {
    #[error("unknown event {0}")]
    Unknown(String),
    #[error("event {event} is not taken: {reason}")]
    Refused { event: String, reason: &'static str },
    /// A smart process other than invoices (31): which type, so the sender knows.
    #[error("event {event} is about smart-process type {type_id}; only {SMART_INVOICE_TYPE_ID} (invoices) is taken")]
    UnsupportedType { event: String, type_id: String },
}

/// The entry of an event name (any case), without looking at `data`.
pub fn entry(event: &str) -> Option<&'static Entry> {
    CATALOGUE
        .iter()
        .find(|e| e.event.eq_ignore_ascii_case(event))
}

/// The entry for an event as delivered: its name, and for the base dynamic-item names the
/// smart-process type in `data[FIELDS][ENTITY_TYPE_ID]`.
pub fn resolve(event: &str, data: &Value) -> Result<&'static Entry, CatalogueMiss> {
    let upper = event.to_ascii_uppercase();
    if let Some(found) = entry(&upper) {
        if let Some(wanted) = found.only_type {
            let type_id = field_text(data, "FIELDS", "ENTITY_TYPE_ID").unwrap_or_default();
            if type_id != wanted {
                return Err(CatalogueMiss::UnsupportedType {
                    event: upper,
                    type_id: if type_id.is_empty() {
                        "(none)".into()
                    } else {
                        type_id
                    },
                });
            }
        }
        return Ok(found);
    }
    if let Some(refused) = REFUSED.iter().find(|r| r.event == upper) {
        return Err(CatalogueMiss::Refused {
            event: upper,
            reason: refused.reason,
        });
    }
    // `ONCRMDYNAMICITEMADD_128`: a smart process the relay has no family for.
    if upper.starts_with("ONCRMDYNAMICITEM") {
        if let Some((_, type_id)) = upper.rsplit_once('_') {
            if !type_id.is_empty() && type_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CatalogueMiss::UnsupportedType {
                    event: upper.clone(),
                    type_id: type_id.to_string(),
                });
            }
        }
    }
    Err(CatalogueMiss::Unknown(upper))
}

/// `data[<container>][<key>]` as text (Bitrix24 sends numbers as strings in forms and as
/// numbers in some JSON samples).
pub fn field_text(data: &Value, container: &str, key: &str) -> Option<String> {
    match data.get(container)?.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The events `relay bind` registers for a family, from the catalogue.
pub fn bound_events(family: Family) -> impl Iterator<Item = &'static str> {
    CATALOGUE
        .iter()
        .filter(move |e| e.bind && e.family == family)
        .map(|e| e.event)
}

/// The supported-events table of the READMEs, generated from the catalogue (a test keeps the
/// READMEs equal to it). `headers`: family, event, entity_type, id, read with, bound.
pub fn markdown_table(headers: [&str; 6], yes: &str, no: &str, delete: &str) -> String {
    let mut out = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(6));
    for family in Family::ALL {
        for e in CATALOGUE.iter().filter(|e| e.family == family) {
            let id = match e.id {
                IdAt::Nothing => "—".to_string(),
                IdAt::Fields(key) => format!("`FIELDS.{key}`"),
                IdAt::TaskFields => "`FIELDS_AFTER.ID` / `FIELDS_BEFORE.ID`".to_string(),
                IdAt::AddressKey => "`TYPE_ID-ENTITY_TYPE_ID-ENTITY_ID`".to_string(),
            };
            let read = match (e.fetch, e.delete) {
                (_, true) => delete.to_string(),
                (Some(f), false) => format!("`{}`", f.method),
                (None, false) => "—".to_string(),
            };
            let only = e
                .only_type
                .map(|t| format!(" (`ENTITY_TYPE_ID` {t})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "| {} | `{}`{} | `{}` | {} | {} | {} |\n",
                e.family,
                e.event,
                only,
                e.entity_type,
                id,
                read,
                if e.bind { yes } else { no }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
