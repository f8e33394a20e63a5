"""The composition root: builds storage, methods and services from settings. Web and CLI start here."""

from __future__ import annotations

from dataclasses import dataclass

from twofold.config import Settings, load_settings
from twofold.domain.clock import utcnow
from twofold.domain.entities import Organization
from twofold.domain.ports import Notifier
from twofold.domain.verification import MethodContext
from twofold.methods.registry import MethodRegistry, default_registry
from twofold.oauth.client_credentials import SecretDigests
from twofold.services.accounts import AccountService
from twofold.services.admin import AdminService
from twofold.services.audit import DeferredAuditTrail
from twofold.services.connected_apps import ConnectedAppService
from twofold.services.context import RequestContext
from twofold.services.crypto import AesGcmSealer, TokenMac
from twofold.services.exemptions import ExemptionService
from twofold.services.identity_providers import IdentityProviderService
from twofold.services.login import LoginService
from twofold.services.maintenance import MaintenanceService
from twofold.services.methods import MethodService
from twofold.services.notifications import LogNotifier, SmtpNotifier
from twofold.services.oauth import OAuthService
from twofold.services.passwords import Passwords
from twofold.services.push import PushService
from twofold.services.push_gateway import NoGateway, PushGateway, WebhookGateway
from twofold.services.sessions import SessionService
from twofold.services.signing import SigningKeyService
from twofold.services.sso import SsoService
from twofold.services.step_up import StepUpService
from twofold.services.throttle import Throttle
from twofold.storage.database import make_engine
from twofold.storage.unit_of_work import SqlUnitOfWorkFactory
from twofold.storage.wakeups import Wakeups, wakeups_for


@dataclass
class Twofold:
    settings: Settings
    uow: SqlUnitOfWorkFactory
    registry: MethodRegistry
    passwords: Passwords
    sealer: AesGcmSealer
    mac: TokenMac
    notifier: Notifier
    throttle: Throttle
    sessions: SessionService
    login: LoginService
    accounts: AccountService
    admin: AdminService
    exemptions: ExemptionService
    step_up: StepUpService
    methods: MethodService
    push: PushService
    connected_apps: ConnectedAppService
    signing_keys: SigningKeyService
    oauth: OAuthService
    wakeups: Wakeups
    maintenance: MaintenanceService
    deferred_audit: DeferredAuditTrail
    identity_providers: IdentityProviderService
    sso: SsoService

    def close(self) -> None:
        self.deferred_audit.close()
        self.wakeups.close()
        self.uow.engine.dispose()


def build(settings: Settings | None = None, *, registry: MethodRegistry | None = None) -> Twofold:
    settings = settings or load_settings()
    secret_key, old_keys = settings.secret_keys()
    engine = make_engine(settings.database_url, busy_timeout_ms=settings.database_lock_timeout_ms)
    uow = SqlUnitOfWorkFactory(engine, lock_timeout_ms=settings.database_lock_timeout_ms)
    registry = registry if registry is not None else default_registry()
    passwords = Passwords(
        memory_kib=settings.argon2_memory_kib,
        time_cost=settings.argon2_time_cost,
        parallelism=settings.argon2_parallelism,
    )
    sealer = AesGcmSealer(secret_key, old_keys)
    notifier: Notifier = (
        SmtpNotifier(settings.smtp_url) if settings.smtp_url else LogNotifier(include_body=settings.dev)
    )
    throttle = Throttle(settings)
    sessions = SessionService(settings, uow)

    def method_context(organization: Organization | None, context: RequestContext) -> MethodContext:
        return MethodContext(
            now=utcnow(),
            sealer=sealer,
            public_url=settings.public_url,
            rp_id=settings.public_host,
            organization=organization or Organization(name=""),
            client_ip=context.ip,
            user_agent=context.user_agent,
        )

    login = LoginService(
        settings=settings,
        uow=uow,
        passwords=passwords,
        throttle=throttle,
        sessions=sessions,
        registry=registry,
        method_context=method_context,
        notifier=notifier,
    )
    accounts = AccountService(
        settings=settings, uow=uow, passwords=passwords, sessions=sessions, throttle=throttle, notifier=notifier
    )
    deferred_audit = DeferredAuditTrail(uow)
    admin = AdminService(
        settings=settings,
        uow=uow,
        sessions=sessions,
        throttle=throttle,
        notifier=notifier,
        deferred_audit=deferred_audit,
    )
    exemptions = ExemptionService(settings=settings, uow=uow, admin=admin, sessions=sessions)
    step_up = StepUpService(uow=uow, registry=registry, sessions=sessions, throttle=throttle, login=login)
    methods = MethodService(uow=uow, registry=registry, sessions=sessions, login=login, notifier=notifier)
    maintenance = MaintenanceService(settings=settings, uow=uow, sealer=sealer)
    digests = SecretDigests(secret_key, old_keys)
    signing_keys = SigningKeyService(uow=uow, sealer=sealer)
    oauth = OAuthService(
        settings=settings, uow=uow, keys=signing_keys, digests=digests, deferred_audit=deferred_audit
    )
    connected_apps = ConnectedAppService(uow=uow, admin=admin, digests=digests, on_change=oauth.forget_client)
    identity_providers = IdentityProviderService(settings=settings, uow=uow, admin=admin, sealer=sealer)
    sso = SsoService(settings=settings, uow=uow, sealer=sealer, sessions=sessions)
    wakeups = wakeups_for(settings.database_url)
    gateway: PushGateway = (
        WebhookGateway(settings.push_webhook_url, settings.push_webhook_secret.get_secret_value())
        if settings.push_webhook_url and settings.push_webhook_secret
        else NoGateway()
    )
    push = PushService(
        settings=settings,
        uow=uow,
        login=login,
        sessions=sessions,
        notifier=notifier,
        gateway=gateway,
        wakeups=wakeups,
        method_context=method_context,
    )
    return Twofold(
        settings=settings,
        uow=uow,
        registry=registry,
        passwords=passwords,
        sealer=sealer,
        mac=TokenMac(secret_key),
        notifier=notifier,
        throttle=throttle,
        sessions=sessions,
        login=login,
        accounts=accounts,
        admin=admin,
        exemptions=exemptions,
        step_up=step_up,
        methods=methods,
        push=push,
        connected_apps=connected_apps,
        signing_keys=signing_keys,
        oauth=oauth,
        wakeups=wakeups,
        maintenance=maintenance,
        deferred_audit=deferred_audit,
        identity_providers=identity_providers,
        sso=sso,
    )
