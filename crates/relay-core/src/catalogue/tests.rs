//! The catalogue against Bitrix24's own documentation: every event page of the CRM, task,
//! app and offline sections of `bitrix24/b24restdocs` (commit 5988ed13) is taken exactly once
//! or refused with a reason, and each entry's id location and read method follow its page.

use super::*;
use serde_json::json;
use std::collections::BTreeMap;

/// (page, event code as the page's sample sends it). Every `on-*.md` under
/// `api-reference/{crm,tasks,common,events}/`; regenerate when the docs add one.
const DOCUMENTED: &[(&str, &str)] = &[
    ("api-reference/common/events/on-app-install.md", "ONAPPINSTALL"),
    ("api-reference/common/events/on-app-method-confirm.md", "ONAPPMETHODCONFIRM"),
    ("api-reference/common/events/on-app-payment.md", "ONAPPPAYMENT"),
    ("api-reference/common/events/on-app-uninstall.md", "ONAPPUNINSTALL"),
    ("api-reference/common/events/on-app-update.md", "ONAPPUPDATE"),
    ("api-reference/common/events/on-user-add.md", "ONUSERADD"),
    ("api-reference/crm/companies/events/on-crm-company-add.md", "ONCRMCOMPANYADD"),
    ("api-reference/crm/companies/events/on-crm-company-delete.md", "ONCRMCOMPANYDELETE"),
    ("api-reference/crm/companies/events/on-crm-company-update.md", "ONCRMCOMPANYUPDATE"),
    ("api-reference/crm/companies/userfields/events/on-crm-company-user-field-add.md", "ONCRMCOMPANYUSERFIELDADD"),
    ("api-reference/crm/companies/userfields/events/on-crm-company-user-field-delete.md", "ONCRMCOMPANYUSERFIELDDELETE"),
    ("api-reference/crm/companies/userfields/events/on-crm-company-user-field-set-enum-values.md", "ONCRMCOMPANYUSERFIELDSETENUMVALUES"),
    ("api-reference/crm/companies/userfields/events/on-crm-company-user-field-update.md", "ONCRMCOMPANYUSERFIELDUPDATE"),
    ("api-reference/crm/contacts/events/on-crm-contact-add.md", "ONCRMCONTACTADD"),
    ("api-reference/crm/contacts/events/on-crm-contact-delete.md", "ONCRMCONTACTDELETE"),
    ("api-reference/crm/contacts/events/on-crm-contact-update.md", "ONCRMCONTACTUPDATE"),
    ("api-reference/crm/contacts/userfield/events/on-crm-contact-user-field-add.md", "ONCRMCONTACTUSERFIELDADD"),
    ("api-reference/crm/contacts/userfield/events/on-crm-contact-user-field-delete.md", "ONCRMCONTACTUSERFIELDDELETE"),
    ("api-reference/crm/contacts/userfield/events/on-crm-contact-user-field-set-enum-values.md", "ONCRMCONTACTUSERFIELDSETENUMVALUES"),
    ("api-reference/crm/contacts/userfield/events/on-crm-contact-user-field-update.md", "ONCRMCONTACTUSERFIELDUPDATE"),
    ("api-reference/crm/currency/events/on-crm-currency-add.md", "ONCRMCURRENCYADD"),
    ("api-reference/crm/currency/events/on-crm-currency-delete.md", "ONCRMCURRENCYDELETE"),
    ("api-reference/crm/currency/events/on-crm-currency-update.md", "ONCRMCURRENCYUPDATE"),
    ("api-reference/crm/deals/events/on-crm-deal-add.md", "ONCRMDEALADD"),
    ("api-reference/crm/deals/events/on-crm-deal-delete.md", "ONCRMDEALDELETE"),
    ("api-reference/crm/deals/events/on-crm-deal-move-to-category.md", "ONCRMDEALMOVETOCATEGORY"),
    ("api-reference/crm/deals/events/on-crm-deal-update.md", "ONCRMDEALUPDATE"),
    ("api-reference/crm/deals/recurring-deals/events/on-crm-deal-recurring-add.md", "ONCRMDEALRECURRINGADD"),
    ("api-reference/crm/deals/recurring-deals/events/on-crm-deal-recurring-delete.md", "ONCRMDEALRECURRINGDELETE"),
    ("api-reference/crm/deals/recurring-deals/events/on-crm-deal-recurring-expose.md", "ONCRMDEALRECURRINGEXPOSE"),
    ("api-reference/crm/deals/recurring-deals/events/on-crm-deal-recurring-update.md", "ONCRMDEALRECURRINGUPDATE"),
    ("api-reference/crm/deals/user-defined-fields/events/on-crm-deal-user-field-add.md", "ONCRMDEALUSERFIELDADD"),
    ("api-reference/crm/deals/user-defined-fields/events/on-crm-deal-user-field-delete.md", "ONCRMDEALUSERFIELDDELETE"),
    ("api-reference/crm/deals/user-defined-fields/events/on-crm-deal-user-field-set-enum-values.md", "ONCRMDEALUSERFIELDSETENUMVALUES"),
    ("api-reference/crm/deals/user-defined-fields/events/on-crm-deal-user-field-update.md", "ONCRMDEALUSERFIELDUPDATE"),
    ("api-reference/crm/document-generator/documents/events/on-crm-document-generator-document-add.md", "ONCRMDOCUMENTGENERATORDOCUMENTADD"),
    ("api-reference/crm/document-generator/documents/events/on-crm-document-generator-document-delete.md", "ONCRMDOCUMENTGENERATORDOCUMENTDELETE"),
    ("api-reference/crm/document-generator/documents/events/on-crm-document-generator-document-update.md", "ONCRMDOCUMENTGENERATORDOCUMENTUPDATE"),
    ("api-reference/crm/leads/events/on-crm-lead-add.md", "ONCRMLEADADD"),
    ("api-reference/crm/leads/events/on-crm-lead-delete.md", "ONCRMLEADDELETE"),
    ("api-reference/crm/leads/events/on-crm-lead-update.md", "ONCRMLEADUPDATE"),
    ("api-reference/crm/leads/userfield/events/on-crm-lead-user-field-add.md", "ONCRMLEADUSERFIELDADD"),
    ("api-reference/crm/leads/userfield/events/on-crm-lead-user-field-delete.md", "ONCRMLEADUSERFIELDDELETE"),
    ("api-reference/crm/leads/userfield/events/on-crm-lead-user-field-set-enum-values.md", "ONCRMLEADUSERFIELDSETENUMVALUES"),
    ("api-reference/crm/leads/userfield/events/on-crm-lead-user-field-update.md", "ONCRMLEADUSERFIELDUPDATE"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-add.md", "onCrmInvoiceAdd"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-delete.md", "onCrmInvoiceDelete"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-recurring-add.md", "onCrmInvoiceRecurringAdd"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-recurring-delete.md", "onCrmInvoiceRecurringDelete"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-recurring-expose.md", "onCrmInvoiceRecurringExpose"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-recurring-update.md", "onCrmInvoiceRecurringUpdate"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-set-status.md", "onCrmInvoiceSetStatus"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-update.md", "onCrmInvoiceUpdate"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-user-field-add.md", "onCrmInvoiceUserFieldAdd"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-user-field-delete.md", "onCrmInvoiceUserFieldDelete"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-user-field-set-enum-values.md", "onCrmInvoiceUserFieldSetEnumValues"),
    ("api-reference/crm/outdated/invoice/events-invoice/on-crm-invoice-user-field-update.md", "onCrmInvoiceUserFieldUpdate"),
    ("api-reference/crm/outdated/measure/events/on-crm-measure-add.md", "onCrmMeasureAdd"),
    ("api-reference/crm/outdated/measure/events/on-crm-measure-delete.md", "onCrmMeasureDelete"),
    ("api-reference/crm/outdated/measure/events/on-crm-measure-update.md", "onCrmMeasureUpdate"),
    ("api-reference/crm/outdated/product-section/events/on-crm-product-section-add.md", "onCrmProductSectionAdd"),
    ("api-reference/crm/outdated/product-section/events/on-crm-product-section-delete.md", "onCrmProductSectionDelete"),
    ("api-reference/crm/outdated/product-section/events/on-crm-product-section-update.md", "onCrmProductSectionUpdate"),
    ("api-reference/crm/outdated/products/events-custom/on-crm-product-add.md", "onCrmProductAdd"),
    ("api-reference/crm/outdated/products/events-custom/on-crm-product-delete.md", "onCrmProductDelete"),
    ("api-reference/crm/outdated/products/events-custom/on-crm-product-property-add.md", "onCrmProductPropertyAdd"),
    ("api-reference/crm/outdated/products/events-custom/on-crm-product-property-delete.md", "onCrmProductPropertyDelete"),
    ("api-reference/crm/outdated/products/events-custom/on-crm-product-property-update.md", "onCrmProductPropertyUpdate"),
    ("api-reference/crm/outdated/products/events-custom/on-crm-product-update.md", "onCrmProductUpdate"),
    ("api-reference/crm/quote/events/on-crm-quote-add.md", "ONCRMQUOTEADD"),
    ("api-reference/crm/quote/events/on-crm-quote-delete.md", "ONCRMQUOTEDELETE"),
    ("api-reference/crm/quote/events/on-crm-quote-update.md", "ONCRMQUOTEUPDATE"),
    ("api-reference/crm/quote/user-field/events/on-crm-quote-user-field-add.md", "ONCRMQUOTEUSERFIELDADD"),
    ("api-reference/crm/quote/user-field/events/on-crm-quote-user-field-delete.md", "ONCRMQUOTEUSERFIELDDELETE"),
    ("api-reference/crm/quote/user-field/events/on-crm-quote-user-field-set-enum-values.md", "ONCRMQUOTEUSERFIELDSETENUMVALUES"),
    ("api-reference/crm/quote/user-field/events/on-crm-quote-user-field-update.md", "ONCRMQUOTEUSERFIELDUPDATE"),
    ("api-reference/crm/requisites/events/on-crm-address-register.md", "onCrmAddressRegister"),
    ("api-reference/crm/requisites/events/on-crm-address-unregister.md", "onCrmAddressUnregister"),
    ("api-reference/crm/requisites/events/on-crm-bank-detail-add.md", "onCrmBankDetailAdd"),
    ("api-reference/crm/requisites/events/on-crm-bank-detail-delete.md", "onCrmBankDetailDelete"),
    ("api-reference/crm/requisites/events/on-crm-bank-detail-update.md", "onCrmBankDetailUpdate"),
    ("api-reference/crm/requisites/events/on-crm-requisite-add.md", "onCrmRequisiteAdd"),
    ("api-reference/crm/requisites/events/on-crm-requisite-delete.md", "onCrmRequisiteDelete"),
    ("api-reference/crm/requisites/events/on-crm-requisite-update.md", "onCrmRequisiteUpdate"),
    ("api-reference/crm/requisites/events/on-crm-requisite-user-field-add.md", "onCrmRequisiteUserFieldAdd"),
    ("api-reference/crm/requisites/events/on-crm-requisite-user-field-delete.md", "onCrmRequisiteUserFieldDelete"),
    ("api-reference/crm/requisites/events/on-crm-requisite-user-field-set-enum-values.md", "onCrmRequisiteUserFieldSetEnumValues"),
    ("api-reference/crm/requisites/events/on-crm-requisite-user-field-update.md", "onCrmRequisiteUserFieldUpdate"),
    ("api-reference/crm/timeline/activities/events/on-crm-activity-add.md", "onCrmActivityAdd"),
    ("api-reference/crm/timeline/activities/events/on-crm-activity-delete.md", "onCrmActivityDelete"),
    ("api-reference/crm/timeline/activities/events/on-crm-activity-update.md", "onCrmActivityUpdate"),
    ("api-reference/crm/timeline/comments/events/on-Crm-Timeline-Comment-Add.md", "onCrmTimelineCommentAdd"),
    ("api-reference/crm/timeline/comments/events/on-Crm-Timeline-Comment-Delete.md", "onCrmTimelineCommentDelete"),
    ("api-reference/crm/timeline/comments/events/on-Crm-Timeline-Comment-Update.md", "onCrmTimelineCommentUpdate"),
    ("api-reference/crm/universal/events/on-crm-dynamic-item-add.md", "ONCRMDYNAMICITEMADD"),
    ("api-reference/crm/universal/events/on-crm-dynamic-item-delete.md", "ONCRMDYNAMICITEMDELETE"),
    ("api-reference/crm/universal/events/on-crm-dynamic-item-update.md", "ONCRMDYNAMICITEMUPDATE"),
    ("api-reference/crm/universal/events/type/on-crm-type-add.md", "ONCRMTYPEADD"),
    ("api-reference/crm/universal/events/type/on-crm-type-delete.md", "ONCRMTYPEDELETE"),
    ("api-reference/crm/universal/events/type/on-crm-type-update.md", "ONCRMTYPEUPDATE"),
    ("api-reference/crm/universal/userfieldconfig/events/on-crm-type-user-field-add.md", "ONCRMTYPEUSERFIELDADD"),
    ("api-reference/crm/universal/userfieldconfig/events/on-crm-type-user-field-delete.md", "ONCRMTYPEUSERFIELDDELETE"),
    ("api-reference/crm/universal/userfieldconfig/events/on-crm-type-user-field-set-enum-values.md", "ONCRMTYPEUSERFIELDSETENUMVALUES"),
    ("api-reference/crm/universal/userfieldconfig/events/on-crm-type-user-field-update.md", "ONCRMTYPEUSERFIELDUPDATE"),
    ("api-reference/events/on-offline-event.md", "ONOFFLINEEVENT"),
    ("api-reference/tasks/comment-item/events-comment/on-task-comment-add.md", "ONTASKCOMMENTADD"),
    ("api-reference/tasks/comment-item/events-comment/on-task-comment-delete.md", "ONTASKCOMMENTDELETE"),
    ("api-reference/tasks/comment-item/events-comment/on-task-comment-update.md", "ONTASKCOMMENTUPDATE"),
    ("api-reference/tasks/events-tasks/on-task-add.md", "ONTASKADD"),
    ("api-reference/tasks/events-tasks/on-task-delete.md", "ONTASKDELETE"),
    ("api-reference/tasks/events-tasks/on-task-update.md", "ONTASKUPDATE"),
];

#[test]
fn every_documented_event_is_taken_once_or_refused_with_a_reason() {
    let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in CATALOGUE {
        assert_eq!(entry.event, entry.event.to_ascii_uppercase());
        *taken.entry(entry.event).or_default() += 1;
    }
    for (event, n) in &taken {
        assert_eq!(*n, 1, "{event} is in the catalogue {n} times");
    }
    for (page, event) in DOCUMENTED {
        let upper = event.to_ascii_uppercase();
        let in_catalogue = taken.contains_key(upper.as_str());
        let refused = REFUSED.iter().filter(|r| r.event == upper).count();
        assert!(
            in_catalogue ^ (refused == 1),
            "{upper} ({page}) must be in the catalogue or refused, exactly once"
        );
        if let Some(r) = REFUSED.iter().find(|r| r.event == upper) {
            assert!(!r.reason.is_empty());
            assert_eq!(r.doc, *page, "{upper}");
        }
    }
    // Nothing is taken or refused that the docs do not list, except what the notes name.
    for entry in CATALOGUE {
        let documented = DOCUMENTED
            .iter()
            .any(|(_, e)| e.eq_ignore_ascii_case(entry.event));
        let suffixed = entry.event.ends_with("_31");
        assert!(
            documented || suffixed || entry.event == "ONAPPTEST",
            "{} is not in the docs",
            entry.event
        );
        assert!(entry.doc.starts_with("api-reference/"), "{}", entry.event);
    }
}

#[test]
fn entries_agree_with_the_documented_pages() {
    for entry in CATALOGUE {
        if entry.event.ends_with("_31") || entry.event == "ONAPPTEST" {
            continue;
        }
        assert!(
            DOCUMENTED
                .iter()
                .any(|(page, e)| *page == entry.doc && e.eq_ignore_ascii_case(entry.event)),
            "{} cites {}",
            entry.event,
            entry.doc
        );
    }
}

#[test]
fn deletes_never_fetch_and_app_events_have_no_id() {
    for entry in CATALOGUE {
        if entry.delete {
            assert!(entry.fetch.is_none(), "{}", entry.event);
            assert!(
                entry.event.ends_with("DELETE")
                    || entry.event.ends_with("DELETE_31")
                    || entry.event == "ONCRMADDRESSUNREGISTER",
                "{}",
                entry.event
            );
        }
        assert_eq!(
            entry.family == Family::App,
            entry.id == IdAt::Nothing,
            "{}",
            entry.event
        );
    }
}

/// on-crm-deal-recurring-add.md: "ID — identifier of the record in the recurring deals
/// settings table"; on-crm-deal-recurring-expose.md: DEAL_ID is the deal created.
#[test]
fn recurring_events_name_their_settings_row_or_the_new_record() {
    let add = entry("onCrmDealRecurringAdd").unwrap();
    assert_eq!(add.entity_type, EntityType::DealRecurring);
    assert_eq!(add.fetch.unwrap().method, "crm.deal.recurring.get");
    let expose = entry("ONCRMDEALRECURRINGEXPOSE").unwrap();
    assert_eq!(
        (expose.entity_type, expose.id),
        (EntityType::Deal, IdAt::Fields("DEAL_ID"))
    );
    let invoice = entry("ONCRMINVOICERECURRINGUPDATE").unwrap();
    assert_eq!(invoice.entity_type, EntityType::InvoiceRecurring);
    assert_eq!(invoice.fetch.unwrap().method, "crm.invoice.recurring.get");
    let expose = entry("ONCRMINVOICERECURRINGEXPOSE").unwrap();
    assert_eq!(
        (expose.entity_type, expose.id),
        (EntityType::Invoice, IdAt::Fields("INVOICE_ID"))
    );
}

/// on-crm-dynamic-item-add.md: the base name carries FIELDS.ENTITY_TYPE_ID; invoices are 31.
#[test]
fn base_dynamic_item_names_take_invoices_only_and_name_other_types() {
    let data = |t: &str| json!({"FIELDS": {"ID": "22", "ENTITY_TYPE_ID": t}});
    let add = resolve("onCrmDynamicItemAdd", &data("31")).unwrap();
    assert_eq!(
        (add.family, add.entity_type),
        (Family::Invoice, EntityType::SmartInvoice)
    );
    assert_eq!(
        resolve("ONCRMDYNAMICITEMUPDATE", &data("1220")),
        Err(CatalogueMiss::UnsupportedType {
            event: "ONCRMDYNAMICITEMUPDATE".into(),
            type_id: "1220".into()
        })
    );
    assert!(matches!(
        resolve("ONCRMDYNAMICITEMADD_128", &json!({})),
        Err(CatalogueMiss::UnsupportedType { type_id, .. }) if type_id == "128"
    ));
    assert!(resolve(
        "ONCRMDYNAMICITEMDELETE",
        &json!({"FIELDS": {"ID": 5, "ENTITY_TYPE_ID": 31}})
    )
    .is_ok());
    assert!(matches!(
        resolve("ONCRMQUOTEADD", &json!({})),
        Err(CatalogueMiss::Refused { .. })
    ));
    assert!(matches!(
        resolve("ONCRMX", &json!({})),
        Err(CatalogueMiss::Unknown(_))
    ));
}

/// on-crm-requisite-user-field-update.md: FIELDS.ID is the user field's id.
#[test]
fn user_field_events_are_about_field_definitions_and_are_bound() {
    for entry in CATALOGUE.iter().filter(|e| e.event.contains("USERFIELD")) {
        assert_eq!(entry.entity_type, EntityType::Userfield, "{}", entry.event);
        assert!(entry.bind, "{}", entry.event);
        if let Some(fetch) = entry.fetch {
            assert!(fetch.method.ends_with(".userfield.get"), "{}", entry.event);
        }
    }
}

#[test]
fn entity_types_serialise_as_their_names() {
    for t in [
        EntityType::SmartInvoice,
        EntityType::Bankdetail,
        EntityType::Akt,
    ] {
        assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
    }
    assert_eq!(
        EntityType::of_salesman_event("client.change.recv"),
        Some(EntityType::Client)
    );
    assert_eq!(
        EntityType::of_salesman_event("akt.delete"),
        Some(EntityType::Akt)
    );
    assert_eq!(EntityType::of_salesman_event("email.send"), None);
}

/// The READMEs list the supported events between `<!-- catalogue -->` markers; they must be
/// exactly the catalogue. On failure the message holds the table to paste.
#[test]
fn readmes_list_exactly_the_catalogue() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for (file, table) in [
        (
            "README.md",
            markdown_table(
                [
                    "Family",
                    "Event",
                    "entity_type",
                    "Id in `data`",
                    "Read with",
                    "`relay bind`",
                ],
                "yes",
                "no",
                "— (delete: `previous`)",
            ),
        ),
        (
            "README.ru.md",
            markdown_table(
                [
                    "Семейство",
                    "Событие",
                    "entity_type",
                    "Id в `data`",
                    "Чем читается",
                    "`relay bind`",
                ],
                "да",
                "нет",
                "— (удаление: `previous`)",
            ),
        ),
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("README readable");
        let begin = "<!-- catalogue:begin -->\n";
        let end = "<!-- catalogue:end -->";
        let start = text.find(begin).map(|i| i + begin.len());
        let stop = text.find(end);
        let (Some(start), Some(stop)) = (start, stop) else {
            panic!("{file} has no catalogue markers");
        };
        assert_eq!(
            &text[start..stop],
            table,
            "{file}: the supported-events table must be the catalogue's; paste:\n{table}"
        );
    }
}
